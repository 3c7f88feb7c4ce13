"""MLflow "models from code" definitions: loading them runs this code, never unpickles an object.

``policy_model.py`` and ``reward_model.py`` are the files MLflow copies into each logged model (``python_model=``);
the weights travel beside them as an artifact folder written by ``save_pretrained`` (safetensors).
``trust_remote_code`` is read from the model config (logged as False); a user turns it on at load time with
``mlflow.pyfunc.load_model(uri, model_config={"trust_remote_code": True})``.
"""
