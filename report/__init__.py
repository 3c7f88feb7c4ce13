"""The run report: one self-contained HTML page per pipeline run (`rlhf report`).

data.py         what the run left in the working tree (stages from dvc.yaml via tasks/graph.py)
mlflow_runs.py  what MLflow knows about it: the pipeline run, each stage's run, registered versions, promotion
sections.py     both turned into the page's sections (model.py: plain data), one generic section per stage;
extras.py       the few stage-specific additions, keyed on a stage's name
render.py       the page as HTML from templates/*.html.j2 (Jinja2, autoescape on); charts.py draws the curves
build.py        all of it for one report (`make_report`)
"""
