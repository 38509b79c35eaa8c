"""Template tag libraries of the Django integration."""
