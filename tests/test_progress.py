"""Progress: log lines every every_s without a terminal, a tqdm bar on one, nothing when quiet."""

import io

from mmrec.progress import Progress


def test_log_lines_bar_and_quiet(monkeypatch):
    lines = []
    p = Progress(10, unit="steps", desc="epoch 3", log=lines.append, every_s=0.0, bar=False)
    p.update(4, loss=1.23456)
    assert lines == [lines[0]] and lines[0].startswith("epoch 3 4/10 steps") and lines[0].endswith("loss 1.2346")
    p.close()
    quiet = []
    q = Progress(10, unit="steps", log=quiet.append, every_s=0.0, bar=True, quiet=True)
    q.update(10)
    q.close()
    assert quiet == [] and q.done == 10
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    b = Progress(5, unit="items", desc="encoding", log=quiet.append, every_s=0.0, bar=True)
    b.update(5, loss=0.5)
    assert b._bar.n == 5 and b._bar.total == 5
    b.close()
    assert "encoding" in err.getvalue() and "/5" in err.getvalue() and quiet == []  # the bar, no log lines
