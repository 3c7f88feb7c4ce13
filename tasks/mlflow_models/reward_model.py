"""The reward model as an MLflow pyfunc: predict({"prompt": [...], "response": [...]}) -> normalised scores."""
import mlflow
from mlflow.pyfunc import PythonModel


class RewardScorer(PythonModel):
    def load_context(self, context):
        from rlhf.modeling import RewardModel, load_tokenizer
        path = context.artifacts["model"]
        self.tok = load_tokenizer(path)
        self.model = RewardModel.from_pretrained(path).eval()

    def predict(self, context, model_input, params=None):
        from rlhf.reward import score_texts
        prompts, responses = list(model_input["prompt"]), list(model_input["response"])
        ended = [True] * len(prompts)
        return score_texts(self.model, self.tok, [str(p) for p in prompts], [str(r) for r in responses], ended,
                           int((params or {}).get("max_length", 64))).tolist()


mlflow.models.set_model(RewardScorer())
