"""The chatbot over private documents: load, split, embed, index (Chroma + BM25), retrieve,
answer with citations."""

from hearthlm.retrieval.chat import DocsChat
from hearthlm.retrieval.embeddings import HearthEmbeddings
from hearthlm.retrieval.factory import build_docs_chat, build_docs_qa
from hearthlm.retrieval.index import DocumentIndex, IndexReport
from hearthlm.retrieval.rag import NO_ANSWER, Answer, DocsQA, Source
from hearthlm.retrieval.retriever import Hit, HybridRetriever

__all__ = [
    "NO_ANSWER",
    "Answer",
    "DocsChat",
    "DocsQA",
    "DocumentIndex",
    "HearthEmbeddings",
    "Hit",
    "HybridRetriever",
    "IndexReport",
    "Source",
    "build_docs_chat",
    "build_docs_qa",
]
