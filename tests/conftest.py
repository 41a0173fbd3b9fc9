pytest_plugins = ["tests.pg", "tests.sshd", "tests.smtp", "tests.faults.plugin"]
