"""What predicts with a loaded model: ``policy_model.PolicyModel`` (sampling, `rlhf generate`, promotion) and
``reward_model.RewardScorer`` (scoring, `rlhf score`, promotion, the reward model's scoring server).

The registry stores the policy in MLflow's transformers flavour (weights, tokenizer with its chat template,
generation config: no code) and the reward model as a pyfunc whose entry file ``reward_entry.py`` only imports the
installed ``RewardScorer``. tasks/model_loading.py loads both as data.
"""
