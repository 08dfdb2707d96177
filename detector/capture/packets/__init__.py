"""Packet sources: pcap/pcapng files and live interfaces -> PacketBatch (and the pcap writer)."""
