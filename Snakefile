# cordflow: text QA -> spoken questions -> base -> warm-up -> CORD -> audio-text gap.
# Each rule is a thin `python -m cordflow <stage>` call; the work lives in workflow/cordflow.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"  # config upgrade + schema validation, helpers
include: "rules/source.smk"
include: "rules/tts.smk"
include: "rules/models.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/provenance.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
        intermediate_outputs(),
