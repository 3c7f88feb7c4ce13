"""The entry file MLflow stores with a registered reward model ("models from code"). It holds no logic: the scorer is
this install's tasks.mlflow_models.reward_model, so a scoring server runs the code of the rlhf-pipeline it has
installed. Our loaders (tasks/model_loading.py) accept a version only when its stored copy of this file is
byte for byte this one, and never execute it."""
import mlflow

from tasks.mlflow_models.reward_model import RewardScorer

mlflow.models.set_model(RewardScorer())
