"""report.html (tools/html_report.py): a self-contained page whose every image exists and every table
has its rows; the λ = 0 / λ > 0 grids are checked to show the same evaluation images."""
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image
from seed_sweep import SEEDS, paired_sweep, write_run

from tools import report


class Page(HTMLParser):
    """What a test needs from the page: images, links, tables (rows of cells), tags, text."""

    def __init__(self, text):
        super().__init__()
        self.imgs, self.hrefs, self.tags, self.tables, self.text = [], [], [], [], []
        self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "a":
            self.hrefs.append(a.get("href"))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append((tag, "".join(self._cell).strip()))
            self._cell = None
        elif tag == "tr":
            self.tables[-1].append(self._row)

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def page_of(folder: Path) -> Page:
    return Page((folder / "report.html").read_text(encoding="utf-8"))


def check_self_contained(folder: Path, page: Page):
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    for ref in [i["src"] for i in page.imgs] + page.hrefs:
        assert ref and "://" not in ref and not ref.startswith(("/", "data:")), ref
        assert (folder / ref).is_file(), ref
    for img in page.imgs:
        with Image.open(folder / img["src"]) as im:
            im.verify()  # a real PNG, not an empty file
        assert img.get("alt")
    for table in page.tables:
        head, *body = table
        assert head and all(tag == "th" for tag, _ in head)
        assert body, "a table without rows"
        assert all(len(row) == len(head) and all(tag == "td" for tag, _ in row) for row in body)


def test_page_holds_tables_plots_grids_and_curves(tmp_path, capsys):
    root = paired_sweep(tmp_path / "runs")
    assert report.main([str(root)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"wrote {root / 'report.html'}"
    page = page_of(root)
    check_self_contained(root, page)
    text = " ".join(page.text)
    # the CEM-gain table, as in results.md, with its interval and caption
    gain = next(t for t in page.tables if t[0][0][1] == "defence")
    assert [c for _, c in gain[1]][9] == "+20.0% [-4.8, +44.8]" and "95% Student-t interval" in text
    assert any(t[0][0][1] == "σ \\ λ" for t in page.tables)
    srcs = [i["src"] for i in page.imgs]
    assert sorted(s for s in srcs if "tradeoff" in s) == ["report_files/tradeoff_decoder.png",
                                                          "report_files/tradeoff_gan.png"]
    # one seed's grids at λ = 0 and 16, and their originals were compared
    grids = [s for s in srcs if "/grids/" in s]
    assert len(grids) == 2 and "l0_seed125" in grids[0] and "l16_seed125" in grids[1]
    assert "Checked: same evaluation images in every grid" in text
    # training curves: one figure per run
    curves = [s for s in srcs if "/curves/" in s]
    assert len(curves) == 2 * len(SEEDS)
    with Image.open(root / curves[0]) as im:
        assert im.width > 400 and im.height > 100


def test_grids_of_other_images_are_flagged(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1})
    write_run(root, 0.05, 16.0, 125, 29.0, {"decoder": 0.2}, originals_seed=999, log=False)
    assert report.main([str(root)]) == 0
    page = page_of(root)
    check_self_contained(root, page)
    assert "the grids' originals differ" in " ".join(page.text)
    assert len([i for i in page.imgs if "/curves/" in i["src"]]) == 1  # the run without train_log.csv has none


def test_page_written_elsewhere_stands_alone_and_old_figures_go(tmp_path, capsys):
    root = paired_sweep(tmp_path / "runs")
    out = tmp_path / "out"
    stale = out / "report_files" / "curves" / "gone.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    assert report.main([str(root), "--out", str(out)]) == 0
    assert not stale.exists() and not (root / "report.html").exists()
    page = page_of(out)
    check_self_contained(out, page)
    assert all((out / i["src"]).resolve().is_relative_to(out.resolve()) for i in page.imgs)


def test_sweep_without_grids_or_logs_still_gets_a_page(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1}, grid=False, log=False)
    assert report.main([str(root)]) == 0
    page = page_of(root)
    check_self_contained(root, page)
    text = " ".join(page.text)
    assert "No run has a decoder/train_time grid" in text and "No run folder holds a train_log.csv" in text



def test_a_damaged_grid_is_named_not_fatal(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, 0.05, 0.0, 125, 30.0, {"decoder": 0.1})
    run = write_run(root, 0.05, 16.0, 125, 29.0, {"decoder": 0.2})
    (run / "images" / "decoder_train_time.png").write_bytes(b"\x89PNG truncated")
    assert report.main([str(root)]) == 0
    text = " ".join(page_of(root).text)
    # Not shown beside the good one, and named once, on the page and on stderr, with the reason.
    assert "not showing the grid" in text and "decoder_train_time.png: not a readable image" in text
    assert "not showing the grid" in capsys.readouterr().err
    assert not list((root / "report_files" / "grids").glob("*seed125*l16*"))
