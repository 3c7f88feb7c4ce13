"""MLflow "models from code" definitions: loading them runs this code, never unpickles an object."""
