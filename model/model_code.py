"""The pyfunc's model code (MLflow models-from-code): `model.publish.log_model` logs this file.

MLflow copies it into the logged model and runs it at load time; it only names echocmr's class,
so the logged model holds no pickled object. The class and its reader come from the installed
echocmr that the model's requirements pin.
"""

import mlflow

from echocmr.model.serving import EchoCMRModel

mlflow.models.set_model(EchoCMRModel())
