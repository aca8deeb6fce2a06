# Runs before `configfile:` loads params.yaml, so a bad YAML file (a syntax error, a duplicate key, an alias bomb)
# is refused with its file and line before anything is built from it. --configfile files are checked too.


def _check_yaml(path):
    """Snakemake's own message for a YAML syntax error has no line number, and its loader keeps the last of two
    equal keys: refuse both, naming the file, line and column (pipeline/yamlio.py)."""
    import sys

    sys.path.insert(0, workflow.basedir)
    from pipeline import yamlio

    try:
        yamlio.load(path)
    except yamlio.YAMLInputError as exc:
        raise WorkflowError(str(exc)) from None


for _path in ["params.yaml", *workflow.overwrite_configfiles]:
    _check_yaml(_path)
