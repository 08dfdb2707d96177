"""Benchmarks as commands (`netad bench ...`): they print figures, they are not timed tests.

- `capture`: offline throughput of the capture stages on a generated capture (bytes read,
  parse, parse + flows + windows, scapy for comparison), memory per tracked flow.
- `live`: a generated capture replayed with tcpreplay over a veth pair in a private
  network namespace into the live source, at increasing rates, with kernel drops per step.
- `model`: scoring and training throughput of the streaming LSTM autoencoder.
"""
