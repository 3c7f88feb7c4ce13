"""The policy as an MLflow pyfunc: predict({"prompt": [...]}) -> generated responses."""
import mlflow
from mlflow.pyfunc import PythonModel


class PolicyModel(PythonModel):
    def load_context(self, context):
        from rlhf.modeling import load_causal_lm, load_tokenizer
        path = context.artifacts["model"]
        self.tok = load_tokenizer(path)
        self.model = load_causal_lm(path, self.tok).eval()

    def predict(self, context, model_input, params=None):
        from rlhf.generation import sample_responses
        params = params or {}
        prompts = list(model_input["prompt"]) if hasattr(model_input, "__getitem__") else list(model_input)
        texts, _ = sample_responses(self.model, self.tok, [str(p) for p in prompts],
                                    int(params.get("max_new_tokens", 24)), float(params.get("temperature", 1.0)),
                                    64, int(params.get("seed", 0)))
        return texts


mlflow.models.set_model(PolicyModel())
