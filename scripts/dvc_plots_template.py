"""Write vendor/dvc_plots.html: the page `dvc plots show` fills (.dvc/config `plots.html_template`), with Vega,
Vega-Lite and Vega-Embed inlined from their npm packages, so that the plots render with no network (DVC's own page
loads them from a CDN).

    cd "$(mktemp -d)" && npm pack vega@5.33.0 vega-lite@5.23.0 vega-embed@6.29.0
    python3 scripts/dvc_plots_template.py THAT_DIR --out vendor/dvc_plots.html
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

PACKAGES = (("vega", "5.33.0"), ("vega-lite", "5.23.0"), ("vega-embed", "6.29.0"))  # Vega-Embed needs the two first
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>DVC plots</title>
<!-- {credits}: inlined from their npm packages by scripts/dvc_plots_template.py (licenses at the end) -->
{scripts}
<style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
<!--
{licenses}
-->
</html>
"""


def _member(archive: Path, name: str) -> str:
    with tarfile.open(archive) as tar:
        return tar.extractfile(f"package/{name}").read().decode("utf-8")


def page(npm_dir: Path) -> str:
    scripts, licenses = [], []
    for name, version in PACKAGES:
        archive = npm_dir / f"{name}-{version}.tgz"
        js = _member(archive, f"build/{name}.min.js")
        if "</script" in js or "{plot_divs}" in js or "{refresh_tag}" in js:
            raise SystemExit(f"{archive}: the script cannot be inlined as it is")
        scripts.append(f"<script>{js}</script>")
        licenses.append(f"{name} {version}:\n{_member(archive, 'LICENSE').replace('--', '- -')}")
    credits = ", ".join(f"{n} {v}" for n, v in PACKAGES)
    return PAGE.format(credits=credits, scripts="\n".join(scripts), licenses="\n".join(licenses))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npm_dir", type=Path, help="the folder where `npm pack` wrote the three .tgz files")
    ap.add_argument("--out", type=Path, default=Path("vendor/dvc_plots.html"))
    args = ap.parse_args()
    args.out.write_text(page(args.npm_dir), encoding="utf-8")


if __name__ == "__main__":
    main()
