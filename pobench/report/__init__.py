"""`pobench report`: results/ -> leaderboards, tuning grids, convergence tables, plots and an HTML report.

    collect.py      run folders -> pandas tables (runs, curves); both forms of eval.json
    stats.py        t-interval over seeds, interpolation at budget points, AUC, budget to a target
    grid.py         --grid parsing and key aliases; the best grid point on the validation metric
    leaderboard.py  one row per algorithm; the grid and its spread
    convergence.py  held-out metrics at fixed training-record points
    build.py        all of it as one JSON-able dict
    render.py       table / markdown / csv / json
    plots.py        PNGs (matplotlib, Agg);  html.py: one self-contained file with the PNGs embedded
"""
