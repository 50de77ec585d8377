"""PSP aggregation: the protocol VM-Orchestration speaks, fanning one holder's invocations out to
many vaults and merging the answers (RFC-NOTES §10). It holds no data and no authority.
"""
