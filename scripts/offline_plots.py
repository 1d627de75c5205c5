"""`dvc plots show` pages that draw without internet: Vega, Vega-Lite and Vega-Embed inlined into DVC's HTML template.

DVC's default plots page loads its three scripts from cdn.jsdelivr.net, so on a machine or in a browser that cannot
reach a CDN the page stays blank. This script fetches the same versions DVC's renderer asks for (dvc-render's
`VegaRenderer.SCRIPTS`) as npm packages (`npm pack`, through npm's registry like any other install), checks each
tarball against its pinned sha512 integrity, and writes an HTML template for DVC's `--html-template` with the three
minified scripts inlined: every page DVC writes from it is self-contained (it draws offline, and keeps drawing when
copied elsewhere). Then it points the checkout's DVC at it (`dvc config --local plots.html_template`), so plain
`dvc plots show` / `dvc plots diff` use it.

    python scripts/offline_plots.py                 # .dvc/plots-offline.html, and the local DVC config
    python scripts/offline_plots.py --out FILE --no-config

`scripts/setup.sh` runs it; a second run with the template in place does nothing. Without npm it says what is
missing and exits 1 (the plots then need internet, as DVC's default does).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / ".dvc" / "plots-offline.html"

# package -> (version, file inside the tarball, npm's sha512 integrity of the tarball). The versions are the ones
# dvc-render 1.x loads from the CDN (DVC's Vega-Lite specs are written for them).
PACKAGES = {
    "vega": ("5.20.2", "package/build/vega.min.js",
             "qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    "vega-lite": ("5.2.0", "package/build/vega-lite.min.js",
                  "Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    "vega-embed": ("6.18.2", "package/build/vega-embed.min.js",
                   "wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
}
MARKER = "equitune offline plots: " + ", ".join(f"{name}@{version}" for name, (version, _, _) in PACKAGES.items())

# DVC fills {refresh_tag} and {plot_divs}; without a {scripts} placeholder it adds no CDN <script> tags.
TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    <!-- {marker} -->
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


class OfflinePlotsError(RuntimeError):
    pass


def _fetch(name: str, version: str, member: str, integrity: str, folder: Path) -> str:
    """The minified script of ``name@version``, from npm, checked against its integrity."""
    npm = shutil.which("npm")
    if npm is None:
        raise OfflinePlotsError("npm is not installed (Debian: apt-get install npm); without it `dvc plots show` "
                                "pages load Vega from cdn.jsdelivr.net and stay blank offline")
    done = subprocess.run([npm, "pack", f"{name}@{version}", "--pack-destination", str(folder), "--silent"],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise OfflinePlotsError(f"npm pack {name}@{version} failed: {done.stderr.strip()[-500:]}")
    tarball = folder / done.stdout.strip().splitlines()[-1]
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != integrity:
        raise OfflinePlotsError(f"{tarball.name}: sha512 {digest} is not the pinned {integrity}; refusing it")
    with tarfile.open(tarball) as archive:
        script = archive.extractfile(member).read().decode("utf-8")
    # A "</script" inside the code would end the inline element early; "<\\/" is the same text to JavaScript.
    return script.replace("</script", "<\\/script")


def build_template() -> str:
    """The HTML template with the three scripts inlined."""
    with tempfile.TemporaryDirectory(prefix="equitune-npm-") as folder:
        scripts = [f'    <script type="text/javascript">/* {name}@{version} */\n{_fetch(name, version, member, sha, Path(folder))}\n'
                   "    </script>" for name, (version, member, sha) in PACKAGES.items()]
    return TEMPLATE.format(marker=MARKER, scripts="\n".join(scripts))


def configure_dvc(template: Path, repo: Path) -> None:
    """``dvc config --local plots.html_template``: relative to .dvc when the template is inside it."""
    dvc_dir = repo / ".dvc"
    value = str(template.relative_to(dvc_dir)) if template.is_relative_to(dvc_dir) else str(template)
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "config", "--local", "plots.html_template", value], cwd=repo, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the template to write (default: %(default)s)")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the DVC repository to configure")
    parser.add_argument("--no-config", action="store_true", help="write the template only")
    parser.add_argument("--force", action="store_true", help="fetch again even if the template is up to date")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    try:
        if args.force or not out.is_file() or MARKER not in out.read_text(encoding="utf-8", errors="replace")[:500]:
            text = build_template()
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_suffix(".partial")
            partial.write_text(text, encoding="utf-8")
            partial.replace(out)  # never a half-written template
            print(f"[offline plots] wrote {out} ({len(text) // 1024} KiB: {MARKER.split(': ')[1]})")
        if not args.no_config:
            configure_dvc(out, args.repo.resolve())
    except OfflinePlotsError as error:
        print(f"[offline plots] {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
