pytest_plugins = [
    "tests.fixtures.control_plane",
    "tests.fixtures.nova_box",
    "tests.fixtures.operator",
]
