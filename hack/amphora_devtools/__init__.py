"""Developer and test tools: a local Kubernetes control plane and Nova box launchers."""
