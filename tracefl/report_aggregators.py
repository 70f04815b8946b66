"""The aggregator figure set: a faulty client under each of Flower's strategies.

Per fusion: the faulty client's fusion share per round, who each method blames,
how often the server pseudo-client would win, and clean localization with its
chance level (``aggregators.csv``, ``aggregator_methods.csv``,
``aggregator_shares.csv``, ``aggregators.md``, ``aggregators.{png,pdf}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tracefl.config import FUSIONS, parse_run_config
from tracefl.plotting import (
    TEXT_WIDTH,
    figure_style,
    numeric_column,
    read_run_config,
    save_figure,
)
from tracefl.report_tables import (
    NOT_APPLICABLE,
    rounded,
    run_dirs,
)
from tracefl.results_io import write_csv, write_text

#: Per-aggregator columns of ``aggregators.csv`` (faulty = the faulty run).
AGGREGATOR_COLUMNS = (
    "fusion",
    "clean_max_test_accuracy",
    "clean_final_test_accuracy",
    "faulty_max_test_accuracy",
    "faulty_final_test_accuracy",
    "faulty_data_share",
    "faulty_fusion_share",
    "faulty_fusion_share_min",
    "faulty_fusion_share_max",
    "rounds",
    "rounds_faulty_excluded",
    "faulty_traced_rounds",
    "faulty_inputs_traced",
)
#: Per (aggregator, method) columns of ``aggregator_methods.csv``: means over
#: the traced rounds of the clean run (strict, paper) and of the faulty run.
AGGREGATOR_METHOD_COLUMNS = (
    "fusion",
    "method",
    "clean_traced_rounds",
    "strict_accuracy",
    "strict_random_baseline",
    "paper_accuracy",
    "paper_random_baseline",
    "clean_pseudo_would_win",
    "faulty_traced_rounds",
    "faulty_accuracy",
    "faulty_random_baseline",
    "faulty_pseudo_would_win",
)
#: Below this a client's mean share counts as excluded (shares are rounded to 1e-6).
EXCLUDED_SHARE = 1e-9


def _aggregator_runs(exp_dir: Path) -> dict[str, dict[str, Path]]:
    """``{fusion: {"clean" | "faulty": run_dir}}`` of the completed runs.

    Raises
    ------
    ValueError
        Two completed runs with the same aggregator and faulty setting.

    """
    runs: dict[str, dict[str, Path]] = {}
    for run_dir in run_dirs(exp_dir):
        cfg = read_run_config(run_dir)
        kind = "faulty" if cfg.get("faulty-clients") else "clean"
        fusion = str(cfg.get("fusion", "fedavg"))
        seen = runs.setdefault(fusion, {})
        if kind in seen:
            raise ValueError(
                f"{exp_dir}: runs {seen[kind].name} and {run_dir.name} are both "
                f"{kind} runs of fusion '{fusion}'; keep one per aggregator"
            )
        seen[kind] = run_dir
    order = {name: i for i, name in enumerate(FUSIONS)}
    return dict(sorted(runs.items(), key=lambda kv: order.get(kv[0], len(order))))


def faulty_shares(run_dir: Path) -> pd.DataFrame:
    """Per round: the faulty clients' share of the client part of the aggregate.

    ``fusion_share`` (``clients.csv``) is each client's ``A_k`` averaged over
    the model's coordinates; divided by the round's sum over fused clients it
    is comparable across aggregators (FedAdam's shares carry its gain ``G``).
    Returns columns ``round``, ``fusion_share`` and ``data_share`` (the
    faulty clients' ``n_k / sum_j n_j``, FedAvg's share).
    """
    faulty = set(parse_run_config(read_run_config(run_dir)).faulty_client_ids)
    clients = pd.read_csv(run_dir / "clients.csv")
    clients = clients[clients["status"] == "fused"].copy()
    clients["faulty"] = clients["client"].astype(int).isin(faulty)
    rows = []
    for server_round, held in clients.groupby("round"):
        share = numeric_column(held, "fusion_share")
        examples = numeric_column(held, "num_examples")
        rows.append(
            {
                "round": int(server_round),
                "fusion_share": float(share[held["faulty"]].sum() / share.sum()),
                "data_share": float(examples[held["faulty"]].sum() / examples.sum()),
            }
        )
    return pd.DataFrame(rows, columns=["round", "fusion_share", "data_share"])


def _method_means(run_dir: Path | None, columns: Sequence[str]) -> pd.DataFrame:
    """Per method: traced rounds and the mean of ``columns`` over them."""
    names = ["method", "traced_rounds", *columns]
    if run_dir is None or not (run_dir / "methods.csv").is_file():
        return pd.DataFrame(columns=names).set_index("method")
    methods = pd.read_csv(run_dir / "methods.csv")
    grouped = methods.groupby("method", sort=False)
    out = pd.DataFrame({"traced_rounds": grouped["round"].nunique()})
    for column in columns:
        out[column] = grouped[column].apply(
            lambda s: pd.to_numeric(s, errors="coerce").mean()
        )
    return out


def aggregator_tables(exp_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The aggregator experiment's two tables, from its run directories.

    Each aggregator has a clean run (localization: strict and paper metrics
    with their chance levels) and a faulty run (one label-flipping client).
    Returns the per-aggregator table (:data:`AGGREGATOR_COLUMNS`: test
    accuracy, the faulty client's share per round, rounds where it was
    excluded) and the per-(aggregator, method) table
    (:data:`AGGREGATOR_METHOD_COLUMNS`). A run that is missing leaves its
    columns NaN.
    """
    per_fusion, per_method = [], []
    for fusion, runs in _aggregator_runs(exp_dir).items():
        clean, faulty = runs.get("clean"), runs.get("faulty")
        row: dict[str, Any] = {"fusion": fusion}
        for kind, run_dir in (("clean", clean), ("faulty", faulty)):
            if run_dir is not None:
                test = numeric_column(
                    pd.read_csv(run_dir / "rounds.csv"), "test_accuracy"
                )
                row[f"{kind}_max_test_accuracy"] = float(test.max())
                row[f"{kind}_final_test_accuracy"] = float(test.iloc[-1])
        if faulty is not None:
            shares = faulty_shares(faulty)
            rounds = pd.read_csv(faulty / "rounds.csv")
            traced = rounds[rounds["status"] == "traced"]
            row.update(
                {
                    "faulty_data_share": float(shares["data_share"].mean()),
                    "faulty_fusion_share": float(shares["fusion_share"].mean()),
                    "faulty_fusion_share_min": float(shares["fusion_share"].min()),
                    "faulty_fusion_share_max": float(shares["fusion_share"].max()),
                    "rounds": len(rounds),
                    "rounds_faulty_excluded": int(
                        (shares["fusion_share"] < EXCLUDED_SHARE).sum()
                    ),
                    "faulty_traced_rounds": len(traced),
                    "faulty_inputs_traced": int(
                        numeric_column(traced, "num_traced").sum()
                    ),
                }
            )
        per_fusion.append(row)
        clean_means = _method_means(
            clean,
            (
                "strict_accuracy",
                "strict_random_baseline",
                "paper_accuracy",
                "paper_random_baseline",
                "pseudo_would_win",
            ),
        )
        faulty_means = _method_means(
            faulty, ("faulty_accuracy", "faulty_random_baseline", "pseudo_would_win")
        )
        names = list(dict.fromkeys([*clean_means.index, *faulty_means.index]))
        for method in names:
            c = clean_means.loc[method] if method in clean_means.index else {}
            f = faulty_means.loc[method] if method in faulty_means.index else {}
            per_method.append(
                {
                    "fusion": fusion,
                    "method": method,
                    "clean_traced_rounds": c.get("traced_rounds", 0),
                    "strict_accuracy": c.get("strict_accuracy"),
                    "strict_random_baseline": c.get("strict_random_baseline"),
                    "paper_accuracy": c.get("paper_accuracy"),
                    "paper_random_baseline": c.get("paper_random_baseline"),
                    "clean_pseudo_would_win": c.get("pseudo_would_win"),
                    "faulty_traced_rounds": f.get("traced_rounds", 0),
                    "faulty_accuracy": f.get("faulty_accuracy"),
                    "faulty_random_baseline": f.get("faulty_random_baseline"),
                    "faulty_pseudo_would_win": f.get("pseudo_would_win"),
                }
            )
    return (
        rounded(pd.DataFrame(per_fusion, columns=list(AGGREGATOR_COLUMNS))),
        rounded(pd.DataFrame(per_method, columns=list(AGGREGATOR_METHOD_COLUMNS))),
    )


def draw_heatmap(
    ax: plt.Axes,
    values: np.ndarray,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str,
    *,
    cmap: str = "viridis",
) -> None:
    """Percentages as an annotated heatmap; NaN cells grey and marked ``n/a``.

    ``values`` is ``(R, C)`` in ``[0, 1]`` (shown as ``0..100``).
    """
    values = np.asarray(values, dtype=float)
    shown = np.ma.masked_invalid(100 * values)
    colormap = plt.get_cmap(cmap).with_extremes(bad="0.88")
    ax.imshow(shown, cmap=colormap, vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(100 * values):
        if np.isnan(value):
            text, color = NOT_APPLICABLE, "0.35"
        else:
            text = f"{value:.0f}"
            color = "black" if value > 60 else "white"
        ax.text(j, i, text, ha="center", va="center", fontsize=6, color=color)
    ax.set_xticks(range(len(column_labels)), list(column_labels))
    ax.set_yticks(range(len(row_labels)), list(row_labels))
    ax.tick_params(length=0)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title)


def _by_method(
    table: pd.DataFrame, fusions: Sequence[str], methods: Sequence[str], column: str
) -> np.ndarray:
    """``(len(fusions), len(methods))`` values of ``column`` (NaN where absent)."""
    wide = table.pivot(index="fusion", columns="method", values=column)
    wide = wide.reindex(index=list(fusions), columns=list(methods))
    return wide.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)


def _chance(table: pd.DataFrame, fusions: Sequence[str], column: str) -> np.ndarray:
    """``(len(fusions), 1)`` chance level of ``column`` (the mean over methods)."""
    means = table.groupby("fusion")[column].apply(
        lambda s: pd.to_numeric(s, errors="coerce").mean()
    )
    return means.reindex(list(fusions)).to_numpy(dtype=float)[:, None]


def draw_aggregators(
    per_fusion: pd.DataFrame, per_method: pd.DataFrame, shares: pd.DataFrame
) -> plt.Figure:
    """The aggregator experiment in four heatmaps (rows: aggregators).

    (a) the faulty client's share of the aggregate per round; (b) how often
    each method blames the faulty client, with chance; (c) how often the
    ``server`` pseudo-client would have outscored every client in the faulty
    runs; (d) strict localization in the clean runs, with chance.
    ``shares`` has columns ``fusion``, ``round``, ``fusion_share``.
    """
    fusions = per_fusion["fusion"].tolist()
    methods = list(dict.fromkeys(per_method["method"]))
    short = [
        m.replace("cross-round-unweighted", "cross-round\n(unweighted)")
        for m in methods
    ]
    round_values = sorted(shares["round"].unique()) if len(shares) else []
    share_grid = (
        shares.pivot(index="fusion", columns="round", values="fusion_share")
        .reindex(index=fusions, columns=round_values)
        .to_numpy(dtype=float)
    )
    with figure_style():
        fig, axes = plt.subplots(
            2,
            2,
            figsize=(TEXT_WIDTH, 6.2),
            gridspec_kw={"hspace": 0.65, "wspace": 0.35},
        )
        draw_heatmap(
            axes[0, 0],
            share_grid,
            fusions,
            [str(int(r)) for r in round_values],
            "(a) Faulty client's share of the aggregate (%)"
            + (
                f"\n(its data share, FedAvg's: {_pct(shares['data_share'].mean())})"
                if len(shares)
                else ""
            ),
            cmap="magma",
        )
        axes[0, 0].set_xlabel("Round")
        draw_heatmap(
            axes[0, 1],
            np.hstack(
                [
                    _by_method(per_method, fusions, methods, "faulty_accuracy"),
                    _chance(per_method, fusions, "faulty_random_baseline"),
                ]
            ),
            fusions,
            [*short, "chance"],
            "(b) Faulty runs: faulty client blamed (%)",
        )
        draw_heatmap(
            axes[1, 0],
            _by_method(per_method, fusions, methods, "faulty_pseudo_would_win"),
            fusions,
            short,
            "(c) Faulty runs: server pseudo-client would win (%)",
            cmap="cividis",
        )
        draw_heatmap(
            axes[1, 1],
            np.hstack(
                [
                    _by_method(per_method, fusions, methods, "strict_accuracy"),
                    _chance(per_method, fusions, "strict_random_baseline"),
                ]
            ),
            fusions,
            [*short, "chance"],
            "(d) Clean runs: strict localization (%)",
        )
        for ax in (axes[0, 1], axes[1, 0], axes[1, 1]):
            ax.tick_params(axis="x", labelrotation=90)
        for ax in (axes[0, 1], axes[1, 1]):  # chance stands apart from the methods
            ax.axvline(len(methods) - 0.5, color="white", linewidth=2.5)
        return fig


def _pct(value: Any) -> str:
    """A share in whole percent, ``n/a`` when missing."""
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return NOT_APPLICABLE if pd.isna(number) else f"{100 * float(number):.0f}"


def _pair(first: Any, second: Any) -> str:
    return f"{_pct(first)} / {_pct(second)}"


def _rows(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in cells),
    ]


def aggregator_markdown(per_fusion: pd.DataFrame, per_method: pd.DataFrame) -> str:
    """The aggregator experiment as three Markdown tables (percent, whole).

    1. faulty runs: the faulty client's share and how often each method blames
       it, with chance; 2. how often the ``server`` pseudo-client would have
       outscored every client (faulty / clean run); 3. clean runs: strict /
       paper-metric localization per method, with chance.
    """
    methods = list(dict.fromkeys(per_method["method"]))
    cell = per_method.set_index(["fusion", "method"])

    def get(fusion: str, method: str, column: str) -> Any:
        key = (fusion, method)
        return cell.loc[key, column] if key in cell.index else None

    def chance(fusion: str, column: str) -> Any:
        values = per_method.loc[per_method["fusion"] == fusion, column]
        return pd.to_numeric(values, errors="coerce").mean()

    faulty, server, clean = [], [], []
    for _, row in per_fusion.iterrows():
        fusion = str(row["fusion"])
        name = f"`{fusion}`"
        rounds = pd.to_numeric(pd.Series([row["rounds"]])).iloc[0]
        faulty.append(
            [
                name,
                _pair(row["clean_max_test_accuracy"], row["faulty_max_test_accuracy"]),
                f"{_pct(row['faulty_fusion_share'])} "
                f"({_pct(row['faulty_fusion_share_min'])}–"
                f"{_pct(row['faulty_fusion_share_max'])})",
                NOT_APPLICABLE
                if pd.isna(rounds)
                else f"{int(row['rounds_faulty_excluded'])} of {int(rounds)}",
                NOT_APPLICABLE
                if pd.isna(rounds)
                else f"{int(row['faulty_traced_rounds'])} "
                f"({int(row['faulty_inputs_traced'])})",
                *(_pct(get(fusion, m, "faulty_accuracy")) for m in methods),
                _pct(chance(fusion, "faulty_random_baseline")),
            ]
        )
        server.append(
            [
                name,
                *(
                    _pair(
                        get(fusion, m, "faulty_pseudo_would_win"),
                        get(fusion, m, "clean_pseudo_would_win"),
                    )
                    for m in methods
                ),
            ]
        )
        clean.append(
            [
                name,
                _pct(row["clean_max_test_accuracy"]),
                *(
                    _pair(
                        get(fusion, m, "strict_accuracy"),
                        get(fusion, m, "paper_accuracy"),
                    )
                    for m in methods
                ),
                _pair(
                    chance(fusion, "strict_random_baseline"),
                    chance(fusion, "paper_random_baseline"),
                ),
            ]
        )
    lines = _rows(
        [
            "`fusion`",
            "max test acc. (clean / faulty)",
            "faulty client's share: mean (min–max)",
            "rounds it is excluded",
            "rounds traced (inputs)",
            *methods,
            "chance",
        ],
        faulty,
    )
    lines += ["", *_rows(["`fusion`", *methods], server), ""]
    lines += _rows(
        ["`fusion`", "max test acc.", *methods, "chance"],
        clean,
    )
    return "\n".join(lines) + "\n"


def aggregators_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Aggregators: the faulty client's share, who is blamed, localization.

    Writes ``aggregators.csv``, ``aggregator_methods.csv`` (see
    :func:`aggregator_tables`), ``aggregator_shares.csv`` (the faulty client's
    share per round and aggregator) and ``aggregators.md`` (the README's
    tables, :func:`aggregator_markdown`) beside the figure.
    """
    per_fusion, per_method = aggregator_tables(exp_dir)
    shares = pd.concat(
        [
            faulty_shares(runs["faulty"]).assign(fusion=fusion)
            for fusion, runs in _aggregator_runs(exp_dir).items()
            if "faulty" in runs
        ]
        or [pd.DataFrame(columns=["round", "fusion_share", "data_share", "fusion"])],
        ignore_index=True,
    )
    write_csv(
        exp_dir / "aggregators.csv", per_fusion.to_dict("records"), AGGREGATOR_COLUMNS
    )
    write_csv(
        exp_dir / "aggregator_methods.csv",
        per_method.to_dict("records"),
        AGGREGATOR_METHOD_COLUMNS,
    )
    write_text(exp_dir / "aggregators.md", aggregator_markdown(per_fusion, per_method))
    share_columns = ("fusion", "round", "fusion_share", "data_share")
    write_csv(
        exp_dir / "aggregator_shares.csv",
        rounded(shares).to_dict("records"),
        share_columns,
    )
    with figure_style():
        return save_figure(
            draw_aggregators(per_fusion, per_method, shares), exp_dir / "aggregators"
        )
