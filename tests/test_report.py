"""results/fashion_mnist/report.py on runs written here: the seed statistics and Welch's
test against the textbook formulas, the verdict rule, the speed line and the 'best' run."""
import importlib.util
import json
import math
import os
import statistics

from scipy import stats as sps

from conftest import REPO


def _report(tmp_path, monkeypatch):
  spec = importlib.util.spec_from_file_location(
      'fm_report', os.path.join(REPO, 'results', 'fashion_mnist', 'report.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  monkeypatch.setattr(mod, 'HERE', str(tmp_path))
  monkeypatch.setattr(mod, 'RUNS', str(tmp_path / 'runs'))
  return mod


def _run(root, study, name, seed, accs, images_per_s):
  d = root / 'runs' / study / name / f'seed={seed}'
  d.mkdir(parents=True)
  lines = ['epoch,val_acc1,epoch_time_s,images_per_s']
  lines += [f'{i + 1},{a},60.0,{images_per_s}' for i, a in enumerate(accs)]
  (d / 'metrics.csv').write_text('\n'.join(lines) + '\n')
  (d / 'run.json').write_text(json.dumps({'wall_s': 130.0, 'load_avg': [1.0, 1.5]}))


def _welch(a, b):
  """Welch's t and Welch-Satterthwaite df by their formulas, p from the t distribution."""
  va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
  t = (statistics.mean(b) - statistics.mean(a)) / math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return t, df, 2 * sps.t.sf(abs(t), df)


def test_report_statistics_verdicts_speed_and_best(tmp_path, monkeypatch):
  report = _report(tmp_path, monkeypatch)
  vanilla = [76.46, 77.24, 77.29]
  gated = [79.43, 79.79, 80.18]       # apart from vanilla: beyond the spread
  register = [75.51, 75.96, 77.52]    # overlapping: inside
  for seed in range(3):
    _run(tmp_path, 's002', 'vanilla', seed, [50.0, vanilla[seed] + 1.0, vanilla[seed]], 1000)
    _run(tmp_path, 's002', 'value_gated', seed, [50.0, gated[seed]], 800)
    _run(tmp_path, 's002', 'register', seed, [50.0, register[seed]], 1000)
  _run(tmp_path, 'best', 'light_w64_e32', 0, [80.0, 88.5, 88.1], 1200)
  report.main()
  js = json.loads((tmp_path / 'summary.json').read_text())
  s002 = js['s002']
  assert s002['vanilla']['final']['mean'] == \
      statistics.mean(vanilla)
  assert abs(s002['vanilla']['final']['std'] - statistics.stdev(vanilla)) < 1e-12
  assert s002['vanilla']['best']['values'] == [v + 1.0 for v in vanilla]
  t, df, p = _welch(vanilla, gated)
  w = s002['value_gated']['final_vs_base']
  assert abs(w['t'] - t) < 1e-9 and abs(w['df'] - df) < 1e-9 and abs(w['p'] - p) < 1e-9
  assert w['p'] < 0.05 and not w['ranges_overlap']
  assert s002['register']['final_vs_base']['ranges_overlap']
  md = (tmp_path / 'summary.md').read_text()
  assert 'beyond the seed spread' in md and 'inside the seed spread' in md
  assert md.count('beyond the seed spread') == 2   # value_gated: final and best
  # value_gated trains 800 images/s against vanilla's 1000: 1.25x the step time.
  assert 'value_gated 800 (1.25x the step time of vanilla)' in md
  assert js['best']['light_w64_e32']['final'] == 88.1
  assert 'Best in ~30 minutes (light_w64_e32, seed 0): best 88.50%, final 88.10% after 3 ' \
      'epochs' in md
  assert js['s001']['student_none']['final']['n'] == 0   # not run: no numbers, no error
