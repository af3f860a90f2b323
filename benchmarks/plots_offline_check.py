"""Check that `dvc plots show` renders with no network, in a real headless browser.

Builds a throwaway DVC repo in a temp dir with this repo's `[plots]` config section, its HTML template
(.dvc/plots/offline.html, vega/vega-lite/vega-embed inlined) and its custom Pareto template
(.dvc/plots/pareto.json), plus a made-up results file (2 tasks x 3 allocations x 2 factorisations x
2 budgets). Runs `dvc plots show` twice, with the offline template and with DVC's default (CDN) page,
and opens each page in headless Chromium with networking off: inside an empty network namespace
(`unshare -n`, when permitted) and in any case through a proxy that points nowhere and a host
resolver that resolves nothing. The offline page must draw the plot (a non-empty <canvas> inside
the vega-embed div, a non-blank screenshot with the line colours, no console errors); the CDN page
must not (this shows the check can fail). Writes benchmarks/results/plots_offline_check.md.

Needs Chromium (Debian: `apt-get install chromium`) and the repo's venv (dvc on PATH).

    python benchmarks/plots_offline_check.py [--chromium /usr/bin/chromium] [--keep]
"""
import argparse
import configparser
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

from fisvd.results import recorded

ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_NET_FLAGS = ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                "--host-resolver-rules=MAP * ~NOTFOUND"]


def run(cmd, cwd, **kw):
    print("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run(cmd, cwd=cwd, check=True, text=True, capture_output=True, **kw)


def rows():
    """Made-up Pareto rows: score falls as fewer params are kept, by method; one collapsed cell."""
    out = []
    dense = {"mrpc": (84.0, 22.7e6), "rte": (66.0, 22.7e6)}
    for task, (top, n) in dense.items():
        for a, alloc in enumerate(["uniform", "max_fi", "fi_retention"]):
            for f, fact in enumerate(["svd", "fwsvd"]):
                for p in (0.7, 0.3):
                    score = top - (1 - p) * (30 - 8 * a - 6 * f)
                    out.append({"task": task, "allocation": alloc, "factorisation": fact,
                                "method": f"{alloc}+{fact}", "kept_params": round(n * (0.3 + 0.7 * p)),
                                "score": round(score, 2), "kept_ratio": p,
                                "collapsed": score < top - 20})
    return out


def make_repo(tmp: pathlib.Path):
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".dvc" / "config")
    if not cfg.has_option("plots", "html_template"):
        sys.exit("no plots.html_template in .dvc/config")
    template = cfg.get("plots", "html_template")
    print(f"repo .dvc/config: plots.html_template = {template}")
    run(["git", "init", "-q"], tmp)
    run(["dvc", "init", "-q"], tmp)
    run(["dvc", "config", "plots.html_template", template], tmp)
    src = ROOT / ".dvc" / "plots"
    dst = tmp / ".dvc" / "plots"
    if os.path.isabs(template):
        sys.exit(f"plots.html_template {template} is absolute: expected a path relative to .dvc/")
    for rel in ("plots/pareto.json", template):
        (tmp / ".dvc" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / ".dvc" / rel, tmp / ".dvc" / rel)
    shutil.copytree(src / "vendor", dst / "vendor")
    (tmp / "metrics").mkdir()
    data = rows()
    (tmp / "metrics" / "pareto.json").write_text(json.dumps(data, indent=1))
    (tmp / "dvc.yaml").write_text(
        "plots:\n  - metrics/pareto.json:\n      template: pareto\n      x: kept_params\n      y: score\n")
    print(f"throwaway repo {tmp}: {len(data)} rows in metrics/pareto.json, dvc.yaml plots entry "
          "template=pareto x=kept_params y=score")


def chromium_cmd(chromium, tmp, netns):
    prefix = ["unshare", "-n"] if netns else []
    return [*prefix, chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
            "--disable-extensions", "--disable-background-networking", *NO_NET_FLAGS,
            f"--user-data-dir={tmp / 'chrome-profile'}", "--window-size=1200,900",
            "--virtual-time-budget=20000", "--enable-logging=stderr", "--v=0"]


def console_errors(stderr: str):
    msgs = [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    errs = [m for m in msgs if re.search(r"error|uncaught|not defined|failed", m, re.I)]
    return msgs, errs


def screenshot_stats(png: pathlib.Path):
    import numpy as np
    from PIL import Image
    px = np.asarray(Image.open(png).convert("RGB"), dtype=int).reshape(-1, 3)
    ink = px[(px != 255).any(axis=1)]
    # Saturated pixels = coloured lines/points (axes, text and grid are grey).
    sat = ink[ink.max(axis=1) - ink.min(axis=1) > 80]
    return len(ink) / len(px), len({tuple(c) for c in (sat // 32).tolist()})


def check_page(chromium, tmp, page: pathlib.Path, netns: bool):
    base = chromium_cmd(chromium, tmp, netns)
    url = page.resolve().as_uri()
    dom = subprocess.run([*base, "--dump-dom", url], text=True, capture_output=True, timeout=300)
    png = page.with_suffix(".png")
    shot = subprocess.run([*base, f"--screenshot={png}", url], text=True, capture_output=True, timeout=300)
    print("$ " + " ".join(base) + f" --dump-dom {url}   (and again with --screenshot={png.name})")
    html = dom.stdout
    divs = re.findall(r'<div id="[^"]*" class="[^"]*vega-embed[^"]*".*?</div>', html, re.S) or \
        re.findall(r'<div[^>]*vega-embed.*?</div>', html, re.S)
    canvases = re.findall(r'<canvas[^>]*width="(\d+)"[^>]*height="(\d+)"', html)
    svgs = html.count("<svg")
    msgs, errs = console_errors(dom.stderr + shot.stderr)
    ink, colours = screenshot_stats(png) if png.is_file() else (0.0, 0)
    net = [m for m in (dom.stderr + shot.stderr).splitlines() if "ERR_" in m or "net::" in m]
    print(f"  chromium rc {dom.returncode}/{shot.returncode}; vega-embed divs {len(divs)}; "
          f"canvas {[f'{w}x{h}' for w, h in canvases]}; svg {svgs}; "
          f"screenshot non-white {ink:.1%}, saturated colour bins {colours}")
    for m in (msgs + net)[:6]:
        print("  console: " + m.strip()[:200])
    if not msgs:
        print("  console: (no messages)")
    rendered = bool(divs) and any(int(w) > 100 and int(h) > 100 for w, h in canvases) and ink > 0.01 \
        and colours >= 3 and not errs
    return rendered


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                    or shutil.which("google-chrome"))
    ap.add_argument("--keep", action="store_true", help="keep the temp repo and print its path")
    args = ap.parse_args()
    if not args.chromium:
        sys.exit("no chromium found: apt-get install chromium, or pass --chromium")
    version = subprocess.run([args.chromium, "--version"], text=True, capture_output=True).stdout.strip()
    dvc_version = subprocess.run(["dvc", "--version"], text=True, capture_output=True).stdout.strip()
    netns = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0 \
        if shutil.which("unshare") else False
    print(f"browser: {version}; dvc {dvc_version}")
    print(f"network off: {'unshare -n (empty network namespace) + ' if netns else ''}"
          f"{' '.join(NO_NET_FLAGS)}")
    check = subprocess.run([sys.executable, str(ROOT / ".dvc/plots/build_offline_html.py"), "--check"],
                           text=True, capture_output=True)
    print("template: " + (check.stdout or check.stderr).strip().replace(str(ROOT) + "/", ""))

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="plots_offline_"))
    try:
        make_repo(tmp)
        print("\n[offline template] dvc plots show  (page in the default dvc_plots/)")
        run(["dvc", "plots", "show"], tmp)
        offline_page = tmp / "dvc_plots" / "index.html"
        print(f"  page {offline_page.stat().st_size / 1024:.0f} KiB, "
              f"<script src=> tags: {offline_page.read_text().count('<script src=')}")
        offline_ok = check_page(args.chromium, tmp, offline_page, netns)
        print(f"  -> rendered offline: {'YES' if offline_ok else 'NO'}")

        elsewhere = tmp.parent / (tmp.name + "_elsewhere")
        elsewhere.mkdir()
        print(f"\n[offline template, page outside the repo] dvc plots show -o {elsewhere}/plots")
        run(["dvc", "plots", "show", "-o", str(elsewhere / "plots")], tmp)
        moved_ok = check_page(args.chromium, tmp, elsewhere / "plots" / "index.html", netns)
        print(f"  -> rendered offline: {'YES' if moved_ok else 'NO'}")

        print("\n[DVC default CDN template] dvc config --unset plots.html_template; "
              "dvc plots show -o dvc_plots_cdn")
        run(["dvc", "config", "--unset", "plots.html_template"], tmp)
        run(["dvc", "plots", "show", "-o", "dvc_plots_cdn"], tmp)
        cdn_page = tmp / "dvc_plots_cdn" / "index.html"
        print("  scripts: " + ", ".join(re.findall(r'<script src="([^"]+)"', cdn_page.read_text())))
        cdn_ok = check_page(args.chromium, tmp, cdn_page, netns)
        print(f"  -> rendered offline: {'YES' if cdn_ok else 'NO'} (expected NO: the check can fail)")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(tmp.parent / (tmp.name + "_elsewhere"), ignore_errors=True)

    ok = offline_ok and moved_ok and not cdn_ok
    print(f"\nRESULT: {'PASS' if ok else 'FAIL'} (offline template renders with no network: "
          f"{offline_ok and moved_ok}; CDN template fails with no network: {not cdn_ok})")
    return ok


if __name__ == "__main__":
    with recorded(str(ROOT / "benchmarks/results/plots_offline_check.md")):
        ok = main()
    sys.exit(0 if ok else 1)
