-- Argo CD health of an amphora-operator.dev Amphora.
-- Reads the same fields, in the same order, as kstatus (Flux `wait`, kpt), so both tools agree:
-- deleting -> Progressing; generation not yet observed -> Progressing; Reconciling=True ->
-- Progressing; Stalled=True -> Degraded; Ready=True -> Healthy, or Suspended when the Amphora
-- is suspended as requested; Ready False/Unknown -> Progressing.
-- Stricter than kstatus in one place: an Amphora the operator has not written a Ready condition
-- for yet is Progressing here, where kstatus would read "no conditions" as Current.
local hs = {}

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Pending deletion"
  return hs
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the Amphora"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if status.observedGeneration ~= nil and generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (last observed " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local function describe(condition)
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end

-- The first of Reconciling=True / Stalled=True in list order wins, as in kstatus.
for _, condition in ipairs(status.conditions) do
  if condition.type == "Reconciling" and condition.status == "True" then
    hs.status = "Progressing"
    hs.message = describe(condition)
    return hs
  end
  if condition.type == "Stalled" and condition.status == "True" then
    hs.status = "Degraded"
    hs.message = describe(condition)
    return hs
  end
end

for _, condition in ipairs(status.conditions) do
  if condition.type == "Ready" then
    if condition.status == "True" then
      if status.phase == "Suspended" then
        hs.status = "Suspended"
      else
        hs.status = "Healthy"
      end
    else
      hs.status = "Progressing"
    end
    hs.message = describe(condition)
    return hs
  end
end

hs.status = "Progressing"
hs.message = "Waiting for the operator to report readiness"
return hs
