"""Exceptions that map to the harness's exit codes (0 pass, 1 finding, 2 input error, 3 infrastructure)."""

EXIT_PASS = 0
EXIT_FINDING = 1
EXIT_INPUT = 2
EXIT_INFRA = 3


class HarnessError(Exception):
    exit_code = EXIT_INFRA


class InputError(HarnessError):
    """Bad input from the user: malformed YAML, unknown knob, missing kernel, patch that does not apply."""

    exit_code = EXIT_INPUT


class InfraError(HarnessError):
    """The machinery failed: QEMU died, boot hung, SSH lost, no usable accelerator."""

    exit_code = EXIT_INFRA
