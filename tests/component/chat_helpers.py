"""Helpers shared by the chat tests."""


def assistant_runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """The runs of consecutive masked tokens (one per assistant turn the SFT loss sees)."""
    runs, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])
