"""One-off studies behind a decision (each report in benchmarks/results/ says which): the chat defaults,
the history budget, the quantization ablation, MMI reranking, the runtime's op profile. The standing
suite (speed, fidelity scoreboard, footprint, server load) is benchmarks/ itself."""
