"""The reward model as an MLflow pyfunc: predict(DataFrame{"prompt", "response"[, "ended"]}) -> one normalised
score per row (mean 0, std 1 on reference-policy samples). ``ended`` (default True) says the response finished with
the end-of-sequence token, exactly as the policy produced it. Param: max_length (tokens, default 64)."""
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RewardScorer(PythonModel):
    def load_context(self, context):
        from rlhf.modeling import RewardModel, load_tokenizer
        path = context.artifacts["model"]
        trust = bool((context.model_config or {}).get("trust_remote_code", False))
        self.tok = load_tokenizer(path, trust_remote_code=trust)
        self.model = RewardModel.from_pretrained(path, trust_remote_code=trust).eval()

    # The DataFrame hint tells MLflow to validate against the logged signature, not infer one from hints.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        from rlhf.train_reward import score_texts
        prompts, responses = list(model_input["prompt"]), list(model_input["response"])
        has_ended = "ended" in (model_input.columns if hasattr(model_input, "columns") else model_input)
        ended = [True if e is None or e != e else bool(e) for e in model_input["ended"]] if has_ended \
            else [True] * len(prompts)
        max_length = int((params or {}).get("max_length") or 64)
        return score_texts(self.model, self.tok, [str(p) for p in prompts], [str(r) for r in responses], ended,
                           max_length).tolist()


mlflow.models.set_model(RewardScorer())
