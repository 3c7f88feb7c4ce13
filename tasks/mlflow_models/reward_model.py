"""The reward model as an MLflow pyfunc: predict(DataFrame{"prompt", "response"[, "ended"]}) -> one normalised
score per row (mean 0, std 1 on reference-policy samples for ours). ``ended`` (default True) says the response
finished with its end-of-turn token, exactly as the policy produced it. Param: max_length (tokens, default 64).

The folder is any one-label ``*ForSequenceClassification`` reward model (ours: rlhf/reward_format.py); it is read
with its own tokenizer and chat template, through the same scorer as the pipeline's stages
(rlhf/reward_scoring.py ``RewardScorer.score_texts``), so `rlhf score` gives the numbers `evaluate` and PPO use.
A prompt is text, or (when called in Python) a list of chat messages."""
import pandas as pd
from mlflow.pyfunc import PythonModel

MAX_LENGTH = 64


class RewardScorer(PythonModel):
    def load_context(self, context):
        from rlhf.reward_scoring import RewardScorer as Scorer
        trust = bool((context.model_config or {}).get("trust_remote_code", False))
        self.scorer = Scorer.load(context.artifacts["model"], trust_remote_code=trust)
        self.model, self.tok = self.scorer.model, self.scorer.tok

    # The DataFrame hint tells MLflow to validate against the logged signature, not infer one from hints.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        prompts, responses = list(model_input["prompt"]), list(model_input["response"])
        has_ended = "ended" in (model_input.columns if hasattr(model_input, "columns") else model_input)
        ended = [True if e is None or e != e else bool(e) for e in model_input["ended"]] if has_ended \
            else [True] * len(prompts)
        max_length = int((params or {}).get("max_length") or MAX_LENGTH)
        prompts = [p if isinstance(p, (list, tuple)) else str(p) for p in prompts]
        return self.scorer.score_texts(prompts, [str(r) for r in responses], ended, max_length).tolist()

