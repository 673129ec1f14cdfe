"""Read models a person looks at: the lineage of a prediction and the champion's model card."""
