"""The HTTP API and the review page (FastAPI on uvicorn).

Importing this package does not import TensorFlow: the model loads with the first generate
request, so the read endpoints answer at once.
"""
