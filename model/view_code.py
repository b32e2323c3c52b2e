"""The view classifier's pyfunc code (MLflow models-from-code): `model.view_store` logs this file.

It only names echocmr's class, so the logged model holds no pickled object.
"""

import mlflow

from echocmr.model.view_serving import ViewPyfunc

mlflow.models.set_model(ViewPyfunc())
