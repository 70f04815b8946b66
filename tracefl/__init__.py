"""TraceFL: neuron provenance for federated learning, as a Flower app."""
