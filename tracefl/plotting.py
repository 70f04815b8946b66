"""Figures of one run, rebuilt from its CSVs alone (no training needed).

``plot_run(out_dir)`` reads ``rounds.csv``, ``inputs.csv`` and ``clients.csv`` and
writes, as PNG and PDF:

* ``accuracy.{png,pdf}`` - global test accuracy and localization accuracy
  (paper and strict metrics, or faulty-client accuracy and FedDebug) per round,
  with the random baselines as dashed lines;
* ``provenance_round_<r>.{png,pdf}`` - the paper's Fig. 1 view: the client
  probabilities of every traced input next to each client's label distribution.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tracefl.results_io import atomic_open


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` atomically, then close it."""
    paths = []
    for suffix in (".png", ".pdf"):
        path = stem.with_suffix(suffix)
        with atomic_open(path, "wb") as handle:
            # No creation date in the PDF: re-plotting the same CSVs gives the
            # same bytes, so regenerated figures do not churn in version control.
            metadata = {"CreationDate": None} if suffix == ".pdf" else None
            fig.savefig(
                handle,
                format=suffix[1:],
                dpi=150,
                bbox_inches="tight",
                metadata=metadata,
            )
        paths.append(path)
    plt.close(fig)
    return paths


def numeric_column(frame: pd.DataFrame, column: str) -> pd.Series:
    """``frame[column]`` as floats ("n/a" and blanks become NaN; all NaN if absent)."""
    if column not in frame:
        return pd.Series(np.nan, index=frame.index)
    return pd.to_numeric(frame[column], errors="coerce")


def plot_accuracy(rounds: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Global and localization accuracy per round, with random baselines."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    r = rounds["round"]
    ax.plot(
        r,
        100 * numeric_column(rounds, "test_accuracy"),
        "k-o",
        label="Global model acc.",
    )
    faulty = numeric_column(rounds, "faulty_accuracy").notna().any()
    series = (
        [
            ("faulty_accuracy", "TraceFL faulty-client loc.", "C0", "-s"),
            ("feddebug_accuracy", "FedDebug", "C3", "-^"),
            ("faulty_random_baseline", "Random client", "C0", ":"),
        ]
        if faulty
        else [
            ("paper_accuracy", "TraceFL loc. (paper metric)", "C0", "-s"),
            ("strict_accuracy", "TraceFL loc. (strict metric)", "C1", "-^"),
            ("paper_random_baseline", "Random client (paper)", "C0", ":"),
            ("strict_random_baseline", "Random client (strict)", "C1", ":"),
        ]
    )
    for column, label, color, style in series:
        values = numeric_column(rounds, column)
        if values.notna().any():
            ax.plot(r, 100 * values, style, color=color, label=label)
    ax.set_xlabel("Round")
    ax.set_ylabel("Accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xticks(list(r))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, stem)


def plot_provenance_round(
    inputs: pd.DataFrame, clients: pd.DataFrame, server_round: int, stem: Path
) -> list[Path]:
    """Client probabilities per traced input beside the clients' label counts."""
    rows = inputs[inputs["round"] == server_round]
    held = clients[clients["round"] == server_round].sort_values("client")
    client_ids = held["client"].tolist()
    probs = rows[[f"prob_client-{c}" for c in client_ids]].to_numpy(dtype=float)
    label_cols = [c for c in held.columns if c.startswith("label_")]
    counts = held[label_cols].to_numpy(dtype=float)
    share = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)

    height = max(3.0, 0.22 * len(rows) + 1.5)
    fig, (ax_p, ax_c) = plt.subplots(
        1, 2, figsize=(11, height), gridspec_kw={"width_ratios": [1, 1]}
    )
    im = ax_p.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax_p.set_xticks(range(len(client_ids)), [str(c) for c in client_ids], fontsize=7)
    ax_p.set_yticks(
        range(len(rows)),
        [
            f"#{i} (y={t})"
            for i, t in zip(rows["input_index"], rows["true_label"], strict=True)
        ],
        fontsize=6,
    )
    ax_p.set_xlabel("Client")
    ax_p.set_title(f"Round {server_round}: TraceFL client probabilities", fontsize=9)
    fig.colorbar(im, ax=ax_p, fraction=0.04)
    im2 = ax_c.imshow(share.T, aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax_c.set_xticks(range(len(client_ids)), [str(c) for c in client_ids], fontsize=7)
    ax_c.set_yticks(
        range(len(label_cols)),
        [c.removeprefix("label_") for c in label_cols],
        fontsize=6,
    )
    ax_c.set_xlabel("Client")
    ax_c.set_ylabel("Label")
    ax_c.set_title("Share of each label held by each client", fontsize=9)
    fig.colorbar(im2, ax=ax_c, fraction=0.04)
    return save_figure(fig, stem)


def plot_run(out_dir: Path) -> list[Path]:
    """Rebuild every figure of one run directory from its CSVs."""
    out_dir = Path(out_dir)
    rounds = pd.read_csv(out_dir / "rounds.csv")
    paths = plot_accuracy(rounds, out_dir / "accuracy", title=out_dir.name)
    inputs_path, clients_path = out_dir / "inputs.csv", out_dir / "clients.csv"
    if inputs_path.exists() and clients_path.exists():
        inputs = pd.read_csv(inputs_path)
        clients = pd.read_csv(clients_path)
        for server_round in sorted(inputs["round"].unique()):
            paths += plot_provenance_round(
                inputs,
                clients,
                int(server_round),
                out_dir / f"provenance_round_{int(server_round)}",
            )
    return paths
