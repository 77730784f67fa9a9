"""Music understanding back end: audio decoding, madmom DSP, the TinyMU network and its inference engine and service."""
