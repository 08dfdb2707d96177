"""The traffic generator (`netad synth`): a small office network with injected attacks, for demos,
tests and benchmarks; and NetFlow/IPFIX datagrams for the collector's tests. A tool beside the
product (like bench/ and eval/), not a stage."""
