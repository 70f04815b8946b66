"""FedDebug on the same round, side by side with TraceFL (faulty mode)."""

from __future__ import annotations

from tracefl.analysis.context import RoundContext
from tracefl.feddebug import feddebug_applicable, localize_faulty_clients

NOT_APPLICABLE = "n/a"


class RunFedDebug:
    """Localize the faulty clients with FedDebug (image models only).

    Runs only on traced faulty-mode rounds; ``n/a`` for text models (FedDebug
    needs continuous inputs), when FedDebug is off, or when fewer than two
    clients (or no non-faulty one) took part.
    """

    name = "feddebug"

    def __call__(self, ctx: RoundContext) -> None:
        """Fill the FedDebug columns of a traced faulty-mode round."""
        cfg = ctx.cfg
        if not cfg.faulty_mode or ctx.status != "traced":
            return
        assert ctx.model is not None
        records, faulty = ctx.records, ctx.faulty_participants
        if (
            not cfg.feddebug
            or not feddebug_applicable(ctx.model)
            or len(records) < 2
            or len(faulty) >= len(records)
        ):
            ctx.row["feddebug_accuracy"] = NOT_APPLICABLE
            ctx.row["feddebug_suspects"] = NOT_APPLICABLE
            return
        models = []
        for state in ctx.outcome.client_states:  # as fused, buffers included
            client_model = ctx.model_factory()
            client_model.load_state_dict(state)
            models.append(client_model)
        input_shape = tuple(ctx.test_data.select_features(0).shape)
        result = localize_faulty_clients(
            models,
            [str(r.partition_id) for r in records],
            input_shape,
            num_faulty=len(faulty),
            num_inputs=cfg.feddebug_num_inputs,
            na_threshold=cfg.feddebug_na_threshold,
            seed=cfg.seed,
            device=ctx.device,
        )
        found = {int(c) for c in result.faulty_client_ids}
        ctx.row["feddebug_accuracy"] = round(len(found & set(faulty)) / len(faulty), 6)
        ctx.row["feddebug_suspects"] = ";".join(result.faulty_client_ids)
        ctx.row["feddebug_seconds"] = round(result.seconds, 4)
