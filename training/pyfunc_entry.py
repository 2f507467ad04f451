"""Models-from-code entry point of the logged pyfunc (MLflow runs this file when loading).

Not imported by the project itself: `training.tracking` passes its path to
`mlflow.pyfunc.log_model(python_model=...)`, so nothing is pickled. It runs with the
model's own `code/` first on `sys.path` (see `training.pyfunc.CODE_FILES`): the import
below resolves where cshealth is not installed.
"""

from mlflow.models import set_model

from training.pyfunc import HealthModelPyfunc

set_model(HealthModelPyfunc())
