"""``moeacc``: run cases against backends, check one case for git bisect, diagnose, probe, merge and
diff reports. One module per group of commands."""

from __future__ import annotations

import click

from harness.cli.api import api_snapshot, build_flashinfer
from harness.cli.fuzz import fuzz
from harness.cli.inspect import diagnose_cmd, list_, probe, study_ue8m0
from harness.cli.reports import diff, merge, report
from harness.cli.run import check, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="moe-accuracy", message="%(version)s")
def main():
    """Numerical-accuracy regression harness for quantized MoE kernels."""


for _cmd in (run, check, fuzz, diagnose_cmd, probe, study_ue8m0, list_, merge, diff, report, api_snapshot,
             build_flashinfer):
    main.add_command(_cmd)

if __name__ == "__main__":
    main()
