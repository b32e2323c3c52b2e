"""The trained model: what it is and how it is stored, registered, loaded, described, served and
run on new DICOMs (network and its config, input contract, artifact and checkpoint layout, the
store for any URI, legacy loading, registry and card, the pyfunc and predict).

`train` and `eval` both import it and never each other (docs/architecture.md).
"""
