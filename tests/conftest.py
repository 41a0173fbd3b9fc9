pytest_plugins = ["tests.pg", "tests.sshd"]
