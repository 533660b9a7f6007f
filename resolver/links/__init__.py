"""What travels on a link: the immutable quantization specs, built from widget values and composed."""
