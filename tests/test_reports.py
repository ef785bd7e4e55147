"""The HTML copy of an executed notebook, as train.sh writes it next to the .ipynb."""

import nbformat

from galaxylib.pipeline.runner import export_html


def test_a_progress_bar_shows_its_last_state_once_in_the_html_report(tmp_path):
    updates = [f"\rServed model on test: {k * 25:3d}%| {k}/4" for k in range(5)]
    cell = nbformat.v4.new_code_cell("for _ in tqdm(range(4)): ...")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=u) for u in updates]
    cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="accuracy 0.99\n"))
    notebook = tmp_path / "03_evaluate.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), notebook)

    html = export_html(notebook).read_text(encoding="utf-8")

    assert html.count("Served model on test") == 1 and "100%| 4/4" in html
    assert "accuracy 0.99" in html
