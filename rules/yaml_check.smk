# Runs before `configfile:` loads params.yaml, so a YAML syntax error names its line (Snakemake's own message
# does not).


def _check_yaml(path):
    """Snakemake's own message for a YAML syntax error has no line number: name the file, line and column first."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise WorkflowError(f"{path}: not valid YAML at {where}: {getattr(exc, 'problem', None) or exc}") from None


_check_yaml("params.yaml")
