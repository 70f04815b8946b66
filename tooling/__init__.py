"""Process tooling for TraceFL's scripts and tests (not part of the library).

It starts and supervises Flower processes (SuperLink, SuperNodes, ``flwr run``)
on this machine; the ``tracefl`` package never imports it.
"""
