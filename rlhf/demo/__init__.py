"""Demo data of the pipeline: the movie-review sentiment task of lm-human-preferences, generated locally.

    lexicon     the vocabulary and the graded polarity of its sentiment words
    generator   seeded review grammar -> corpus.jsonl, sft.jsonl, prompts.jsonl  (``python -m rlhf.demo.generator``)
    judge       GoldJudge: the documented, noise-free preference (positive sentiment and fluency)
    annotators  a simulated Label Studio ranking campaign, written as Label Studio's JSON export

Pure standard library (no torch, numpy, prefect, mlflow or dvc). Submodules are not imported here, so that
``python -m rlhf.demo.generator`` runs without a double-import warning.
"""
