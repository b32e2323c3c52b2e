from echocmr.model.serving import EchoCMRModel  # noqa: F401  models logged by echocmr 0.2 import it from here
