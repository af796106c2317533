"""The demo web page: index.html and static/ (CSS, JS, sample maps), served by model_server.app."""
