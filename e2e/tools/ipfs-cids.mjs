#!/usr/bin/env node
// Reference CIDs for R1FS e2e tests: an independent implementation of what
// `ipfs add --cid-version 1 [-r] PATH` (kubo) prints as the root CID, built
// on the JS UnixFS importer (ipfs-unixfs-importer + blockstore-core).
//
//   node ipfs-cids.mjs [--hidden] PATH...
//
// prints one line per PATH, in order: `<PATH>\t<root CID>` (CIDv1, base32).
//
// - A file: the CID `ipfs add --cid-version 1 FILE` prints (raw leaves,
//   256 KiB fixed-size chunks, balanced DAG with 174 links per node,
//   sha2-256; a file of at most one chunk is a single raw block).
// - A directory: the CID `ipfs add --cid-version 1 -r DIR` prints for DIR
//   itself: a UnixFS directory (not HAMT-sharded below kubo's 256 KiB link
//   estimate) of its files, subdirectories (empty ones too) and symlinks
//   (as UnixFS symlink nodes, not followed), recursively, each named by its
//   entry name. Like `ipfs add -r` without `--hidden`, entries whose name
//   starts with "." are left out; pass --hidden to include them (as
//   `ipfs add -r --hidden`). The directory's own name never matters.
// - A PATH that is itself a symlink is followed.
//
// This script must sit next to the node_modules that ipfs-importer.sh
// installs; run `ipfs-importer.sh`, which prints where it is.

import { createReadStream } from 'node:fs'
import { lstat, readdir, readlink, stat } from 'node:fs/promises'
import { join } from 'node:path'

const CHUNK_SIZE = 262144
const MAX_CHILDREN_PER_NODE = 174
// kubo's HAMTShardingSize: a directory is sharded once the sum of its links'
// name and CID bytes exceeds 256 KiB (not reached by the small test dirs).
const SHARD_SPLIT_THRESHOLD_BYTES = 262144

function die (msg) {
  process.stderr.write(`ipfs-cids: ${String(msg).replace(/\s*\n\s*/g, ' ')}\n`)
  process.exit(1)
}

let importer, fixedSize, balanced, MemoryBlockstore
try {
  ({ importer } = await import('ipfs-unixfs-importer'));
  ({ fixedSize } = await import('ipfs-unixfs-importer/chunker'));
  ({ balanced } = await import('ipfs-unixfs-importer/layout'));
  ({ MemoryBlockstore } = await import('blockstore-core/memory'))
} catch (e) {
  die(`cannot load ipfs-unixfs-importer/blockstore-core (${e.message}); run the copy that e2e/tools/ipfs-importer.sh prints`)
}

const importOptions = () => ({
  cidVersion: 1,
  rawLeaves: true,
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: CHUNK_SIZE }),
  layout: balanced({ maxChildrenPerNode: MAX_CHILDREN_PER_NODE }),
  wrapWithDirectory: false,
  shardSplitThresholdBytes: SHARD_SPLIT_THRESHOLD_BYTES,
  shardSplitStrategy: 'links-bytes'
})

const fileContent = (path) => createReadStream(path, { highWaterMark: 1024 * 1024 })

// The importer splits candidate paths on "/" unless escaped by a backslash.
function checkName (name, where) {
  if (name.endsWith('\\')) {
    throw new Error(`${where}: entry names ending in a backslash are not supported`)
  }
  return name
}

// Import candidates for the tree under `dir`, named `prefix/...`. A directory
// is given as a candidate of its own only when it has no included entries:
// non-empty ones are created by the importer from their entries' paths.
async function * walk (dir, prefix, hidden) {
  const entries = await readdir(dir, { withFileTypes: true })
  let included = 0
  for (const ent of entries) {
    if (!hidden && ent.name.startsWith('.')) continue
    const full = join(dir, ent.name)
    const path = `${prefix}/${checkName(ent.name, full)}`
    if (ent.isDirectory()) {
      included++
      yield * walk(full, path, hidden)
    } else if (ent.isFile()) {
      included++
      yield { path, content: fileContent(full) }
    } else if (ent.isSymbolicLink()) {
      included++
      yield { path, link: await readlink(full) }
    } else {
      process.stderr.write(`ipfs-cids: skipping ${full}: not a file, directory or symlink\n`)
    }
  }
  if (included === 0) yield { path: prefix }
}

async function rootCid (candidates) {
  let last
  for await (const entry of importer(candidates, new MemoryBlockstore(), importOptions())) {
    last = entry
  }
  if (last == null) throw new Error('the importer produced nothing')
  return last.cid.toString()
}

async function cidOf (path, hidden) {
  const st = await stat(path)
  if (st.isFile()) {
    return rootCid([{ content: fileContent(path) }])
  }
  if (st.isDirectory()) {
    // One fixed top-level name: every candidate lies under it, so the
    // importer yields that directory last, and the name is not part of it.
    return rootCid(walk(path, 'root', hidden))
  }
  throw new Error('not a file or directory')
}

const args = process.argv.slice(2)
let hidden = false
const paths = []
for (const a of args) {
  if (a === '--hidden' || a === '-H') hidden = true
  else if (a === '--help' || a === '-h') {
    process.stdout.write('usage: node ipfs-cids.mjs [--hidden] PATH...\n')
    process.exit(0)
  } else paths.push(a)
}
if (paths.length === 0) die('usage: node ipfs-cids.mjs [--hidden] PATH...')

// Check every path before printing anything.
for (const p of paths) {
  try {
    await stat(p)
  } catch (e) {
    const lst = await lstat(p).catch(() => null)
    die(lst != null ? `${p}: dangling symlink (${e.code})` : `${p}: no such file or directory`)
  }
}

for (const p of paths) {
  let cid
  try {
    cid = await cidOf(p, hidden)
  } catch (e) {
    die(`${p}: ${e.message ?? e}`)
  }
  process.stdout.write(`${p}\t${cid}\n`)
}
