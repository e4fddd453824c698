"""Image folders: discovery and splitting, sample datasets from packaged images, inspection."""
