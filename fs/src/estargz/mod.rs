//! The eStargz layer format: footers, TOC, index, verified chunk reads, writer.
