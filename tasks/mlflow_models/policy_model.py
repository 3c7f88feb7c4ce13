"""The policy behind `rlhf generate` and promotion: predict(DataFrame{"prompt"}) -> one sampled response per row.
(The registry holds the policy in MLflow's transformers flavour; this class reads its weights, see
tasks/model_loading.py.)

Params: max_new_tokens, temperature, seed,
max_prompt_tokens. Repeat a prompt to get several responses; rows are sampled with one seeded generator, so the
same input and seed give the same texts.
"""
import pandas as pd
from mlflow.pyfunc import PythonModel

DEFAULT_PARAMS = {"max_new_tokens": 24, "temperature": 1.0, "seed": 0, "max_prompt_tokens": 32}


class PolicyModel(PythonModel):
    def load_context(self, context):
        from rlhf.modeling import load_causal_lm, load_tokenizer
        path = context.artifacts["model"]
        trust = bool((context.model_config or {}).get("trust_remote_code", False))
        self.tok = load_tokenizer(path, trust_remote_code=trust)
        self.model = load_causal_lm(path, self.tok, trust_remote_code=trust).eval()

    # The DataFrame hint tells MLflow to validate against the logged signature, not infer one from hints.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        from rlhf.generation import sample_responses
        p = {**DEFAULT_PARAMS, **{k: v for k, v in (params or {}).items() if v is not None}}
        prompts = list(model_input["prompt"]) if hasattr(model_input, "columns") or isinstance(model_input, dict) \
            else list(model_input)
        texts, _ = sample_responses(self.model, self.tok, [str(x) for x in prompts], int(p["max_new_tokens"]),
                                    float(p["temperature"]), 64, int(p["seed"]),
                                    max_prompt_tokens=int(p["max_prompt_tokens"]))
        return texts

