"""MIT-BIH beats and the federations built from them."""
